"""The foundation every other part of kit stands on: the one user-facing error type, the strict config base,
the settings loader, the run directory layout, stage manifests and the stage contract, hashing and atomic
writes, and the distilled dataset's shape. May import the standard library, pydantic and `runtime` only."""
