"""The vocabulary every pdserve process shares, torch-free: sampling parameters
(sampling_params), output types (outputs), the cluster-wide defaults (defaults), what a
``--model`` spec names (model_ref), the Redis schema (redis_schema), paths, and how one
command-line command runs (cli_main). It imports nothing else of pdserve."""
