"""Datasets: the LeRobotDataset v3 layout, training windows, demonstration collection."""
