"""Running the daemon: settings, logs, metrics and health, recorded status, leader
election, preflight checks and fault points.
"""
