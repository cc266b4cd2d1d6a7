"""The Xiaomi-Robotics-0 model and its training: config, model, processor, checkpoints, policy, data
pipeline, trainer. No hardware SDKs here; datasets are read through recording's store API only."""
