"""
Training pipeline: data generation, vision-language pretraining, instruction tuning, DAgger.

Stages (DESIGN.md §4): `vlit-ros gen-data` renders captioned views and expert trajectories
into shards, `vlit-ros pretrain` aligns vision and language, `vlit-ros finetune` tunes the
instruction executor by imitation of the privileged expert and improves it with DAgger, and
`vlit-ros train-all` chains the three into the shipped default checkpoint.
"""
