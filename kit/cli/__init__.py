"""The `kit` command line, one module per command group; each maps flags onto a stage config and calls the
pipeline or a stage. The top layer: may import everything."""
