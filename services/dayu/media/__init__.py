"""Media shared by the components: image and segment codecs, frame filters, accuracy metrics."""
