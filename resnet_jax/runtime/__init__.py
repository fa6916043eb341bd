"""The process and the backend it runs on: allocator, compilation cache, CPU convolutions, CPU notice.

* `allocator`: jemalloc/tcmalloc for CPU-only runs (re-executes the CLI once).
* `compilation_cache`: JAX's persistent compilation cache, on by default.
* `cpu_conv`: convolution gradients that XLA:CPU runs with Eigen inside `lax.scan`.
* `cpu_compile`: XLA:CPU options for the train step (elementwise ops in YNNPACK).
* `cpu_notice`: the one line a CPU-only training run prints about its expected duration.
* `object_store`: `gs://` paths (workdirs, datasets): one-line errors, generation preconditions.

Nothing here changes what is computed; each module decides how fast it runs, or says so.
"""
