"""The VCU1525 card: its pins (:mod:`.board`) and the shell around the core (:mod:`.shell`)."""
