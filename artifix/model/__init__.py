"""The generator as artifix sees it: loading and sampling (generator), hooks on its layers (trace), image conversion (images) and the compute device (devices)."""
