"""Test utilities that other packages' suites and the benchmarks reuse.

- `streaming.testing.s3`: a real S3 server (moto's ThreadedMotoServer) on 127.0.0.1.
- `streaming.testing.mosaic`: mosaicml-streaming installed in an isolated folder and run in a
  subprocess, for compatibility tests and benchmarks (never imported beside our `streaming`).

Neither is imported by the library itself; their dependencies (moto, pip) are needed only here.
"""

__all__: list[str] = []
