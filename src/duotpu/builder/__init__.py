"""The build: model export, the stages and their work directory, verification, mixed precision,
the build manifest, the old command lines. Only this package knows the work directory's layout
and tpu_mlir's file names."""
