"""The vocabulary every pdserve process shares, torch-free: sampling parameters, output types,
the Redis schema, paths and the cluster-wide defaults. It imports nothing else of pdserve."""
