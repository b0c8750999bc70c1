"""Demos a user runs whole (`make demo`, `make demo-translate`) and the synthetic translation
task they train on."""
