"""The simulator's core: configuration, the round engine and the client half of a round, upload
methods, schedulers, the wireless round, records and results folders. No Flower, no command line."""
