"""The model: configs, one file per family, layers, tensor-parallel sharding, loaders."""
