"""TensorRT engines for Triton: build ``.plan`` files and their ``tensorrt_plan`` configs.

``services.trt.build`` is the command line tool. The contract logic (optimisation profiles,
builder flags, the derived Triton config, calibration batches) lives in pure modules that import
without TensorRT; ``tensorrt`` itself is imported only when an engine is actually built, which
needs an NVIDIA GPU.
"""
