"""ttbench: predict how many steps fine-tuning needs, without training (Zancato et al., 2020)."""

__version__ = "0.1.0"
