"""Flower integration for robustagg: robust strategies and adversarial client apps.

Importing this package needs the ``flower`` extra (``pip install robustagg[flower]``).
"""
