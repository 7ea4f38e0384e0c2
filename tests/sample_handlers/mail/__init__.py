"""A subpackage, which registration of the parent package searches too."""
