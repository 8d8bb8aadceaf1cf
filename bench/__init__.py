"""Benchmarks, in one place: `codecloop bench` (`throughput`: images; `video`: clips on a ladder), the scripts that
profile single stages and the GPU check (`gpu_check.sh`); results, with the hardware and versions that produced
them, in ``bench/results/``. Speed targets live here, never in timed unit tests."""
