"""Benchmarks, in one place: `codecloop bench` (`throughput`: images; `video`: clips on a ladder; `codec_cost`:
each online codec's CPU cost against a GPU step), the scripts that profile single stages and the GPU check
(`gpu_check.sh`); results, with the hardware and versions that produced them, in ``bench/results/``. Speed targets
live here, never in timed unit tests."""
