"""Wire protocols without I/O: frames in, typed commands out; replies in, bytes out."""
