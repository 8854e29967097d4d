"""seqlab.bench: the benchmark harness behind `seqlab bench`.

For any registered model and preset: training throughput, MFU against the measured matmul
peak, peak memory, validation loss after a fixed budget and decode latency per token, each
case checked for correctness before anything is timed, and run side by side with an
x-transformers peer of the same config when it is installed. Modules: cases (what to run),
runner (checks, training, timing), peak / flops / memory (the measurements), report (JSON
and markdown), cli (the command line).
"""
