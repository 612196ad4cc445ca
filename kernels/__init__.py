"""posttrain compute kernels: each has a plain-torch reference and an optimised path.

Imports only torch and triton. Note: transformers probes for a top-level ``kernels``
package (Hugging Face's hub kernels library); ours deliberately exposes no
``get_kernel`` so ``is_kernels_available()`` stays False (see tests/kernels/test_namespace.py).
"""
