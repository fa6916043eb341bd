"""The process and the backend it runs on: devices and mesh, allocator, compilation cache, CPU
convolutions, CPU notice.

* `mesh`: devices, processes and the 1-D data-parallel mesh (`DATA_AXIS`, `create_mesh`).

* `allocator`: jemalloc/tcmalloc for CPU-only runs (re-executes the CLI once).
* `compilation_cache`: JAX's persistent compilation cache, on by default.
* `cpu_conv`: convolution gradients that XLA:CPU runs with Eigen inside `lax.scan`.
* `cpu_compile`: XLA:CPU options for the train step (elementwise ops in YNNPACK).
* `cpu_notice`: the one line a CPU-only training run prints about its expected duration.

Nothing here changes what is computed; each module decides where or how fast it runs, or says so.
"""
