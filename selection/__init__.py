"""What is decided: proxies, strategies, regret and reports. Pure functions, no Ray."""
