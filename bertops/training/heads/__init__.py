"""Each task family's LightningModule (loss and validation metrics), imported by the train stage only."""
