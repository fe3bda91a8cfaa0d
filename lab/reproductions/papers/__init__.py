"""One module per paper; each defines ``CLAIMS`` (a tuple of ``Claim``)."""
