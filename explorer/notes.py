"""What each family's block does, in the app's own words (the Build page's explanation panel)."""

FAMILY_NOTES: dict[str, str] = {
    "lenet": (
        "**LeNet** alternates convolutions, which detect local patterns with shared weights, "
        "and 2×2 pooling, which halves the map. After two such pairs the feature map is "
        "flattened and fully connected layers classify it. Almost all parameters sit in the "
        "first fully connected layer; almost all multiply-adds in the convolutions."),
    "alexnet": (
        "**AlexNet** is LeNet made deeper and wider for 224×224 images: an 11×11 stride-4 "
        "convolution shrinks the image fast, ReLU replaces the sigmoid, and dropout regularises "
        "two 4096-wide fully connected layers, which hold most of its parameters."),
    "vgg": (
        "**VGG** repeats one block: a few 3×3 convolutions with padding 1 (size kept), then a "
        "2×2 max pool (size halved). Two stacked 3×3 convolutions see 5×5 pixels with fewer "
        "weights than one 5×5 convolution. The arch tuple lists the blocks as "
        "(num_convs, out_channels)."),
    "nin": (
        "**Network in Network** follows each spatial convolution with two 1×1 convolutions, a "
        "small fully connected network applied at every pixel. The last block outputs one "
        "channel per class and global average pooling turns each channel into a score, so "
        "there is no large fully connected layer."),
    "googlenet": (
        "**GoogLeNet** runs four branches side by side in each Inception block (1×1, 3×3, 5×5 "
        "convolutions and a pooled path) and concatenates their outputs on channels. 1×1 "
        "convolutions first reduce the channels, which keeps the 3×3 and 5×5 paths cheap."),
    "resnet": (
        "**ResNet** adds a block's input to its output (a skip connection), so each block "
        "learns a residual correction and a block that learns nothing passes the input on "
        "unchanged. When the stride or the channels change, a 1×1 convolution reshapes the "
        "shortcut. Batch norm follows every convolution."),
    "resnext": (
        "**ResNeXt** splits the bottleneck's 3×3 convolution into groups (the cardinality): "
        "each group sees only its own channels, so g groups cost 1/g of a full convolution. "
        "More groups of narrower width often beat a wider network at the same cost."),
    "densenet": (
        "**DenseNet** concatenates instead of adding: every layer in a dense block receives "
        "all earlier feature maps and adds growth-rate new channels. Transition layers (1×1 "
        "conv and 2×2 average pool) cut the channels and the size between blocks."),
}
