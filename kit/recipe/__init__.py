"""The recipe: its schema (nesting each stage's config), the loader that reports every problem with its line
and fix, the mapping from a recipe onto each stage's config, and the `kit init` scaffold with its templates.
May import every stage package (kit.distill, kit.evaluate, trainers, export) and what they stand on."""
