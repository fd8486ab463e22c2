"""A plain Flower app (ServerApp + ClientApp) that trains LeNet-5 with fogsim's
sub-model strategies: each node trains the part of the model its memory budget holds."""
