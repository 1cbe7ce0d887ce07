"""Networks: the VGG-16 attribute classifier, the StyleGAN / mapping-free generators and the discriminator."""
