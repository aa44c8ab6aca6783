"""Value types shared by every part of DualPath: errors, configs, systems."""
