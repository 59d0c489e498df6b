// speq/train/data.hpp: the data set a config names, with its normalization and augmentation.
#pragma once

#include "speq/io/cifar10.hpp"
#include "speq/io/config.hpp"
#include "speq/io/idx.hpp"
#include "speq/io/loader.hpp"

namespace speq::train {

struct DataSets {
    io::Dataset train, test;
    io::Normalization normalization;
    int crop_pad = 0;    // augmentation of the training batches
    bool hflip = false;
};

// CIFAR-10 trains with the standard pad-4 random crop + horizontal flip (when config.augment);
// the MNIST family without augmentation (digits and clothes are centred; flipping digits is wrong).
// `data_dir` overrides config.data_dir when not empty (speq-eval's --data_dir).
inline DataSets load_data(const io::TrainConfig& config, const std::string& data_dir = "") {
    const std::string dir = data_dir.empty() ? config.data_dir : data_dir;
    DataSets d;
    switch (config.dataset) {
        case io::DatasetKind::cifar10:
            d.train = io::load_cifar10(dir, true);
            d.test = io::load_cifar10(dir, false);
            d.normalization = io::cifar10_normalization();
            if (config.augment) d.crop_pad = 4, d.hflip = true;
            break;
        case io::DatasetKind::fashion_mnist:
            d.train = io::load_fashion_mnist(dir, true);
            d.test = io::load_fashion_mnist(dir, false);
            d.normalization = io::fashion_mnist_normalization();
            break;
        case io::DatasetKind::mnist:
            d.train = io::load_mnist(dir, true);
            d.test = io::load_mnist(dir, false);
            d.normalization = io::mnist_normalization();
            break;
    }
    return d;
}

}  // namespace speq::train
