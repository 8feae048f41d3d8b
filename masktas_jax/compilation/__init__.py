"""What a compiled program costs: analytic FLOPs, the chip table and compile
targets, and the roofline from XLA's figures."""
