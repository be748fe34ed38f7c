"""The built-in image repository: content by sha256 digest, served with Range, verified on use."""
