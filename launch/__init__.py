"""The `codecloop` command line, YAML configs and launch recipes."""
