"""Fleet-wide model operations on every Triton pod of a Helm release.

An explicit model-control call sent through the Triton Service reaches one pod only, so a
rollout has to find the pods itself (Kubernetes API) and talk to each of them (Triton gRPC).
"""
