"""What training adds to the model: augmentation, the MFoM and noisy-label objectives, tf.distribute strategies and clusters."""
