"""A Flower app running robustagg's RobustStrategy and adversarial client nodes."""
