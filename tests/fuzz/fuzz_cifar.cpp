// libFuzzer harness: the CIFAR-10 binary reader. Input: 1 flag byte, then the file content.
// Flag bit 0: read the training set (the content is written as data_batch_1..5.bin) instead of
// the test set (test_batch.bin); bits 1-2: records_per_file - 1 (1 to 4, so that small inputs
// can be whole files). See fuzz_io_common.hpp for the cost of going through files.
#include "fuzz_io_common.hpp"
#include "speq/io/cifar10.hpp"

using namespace speq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    const uint8_t flags = data[0];
    const bool train = flags & 1;
    const int64_t records = 1 + ((flags >> 1) & 3);
    const std::filesystem::path& dir = fuzz::work_dir("cifar");
    if (train)
        for (int i = 1; i <= 5; ++i) fuzz::write_file(dir / ("data_batch_" + std::to_string(i) + ".bin"), data + 1, size - 1);
    else
        fuzz::write_file(dir / "test_batch.bin", data + 1, size - 1);
    try {
        io::Dataset d = io::load_cifar10(dir.string(), train, records);
        if (d.size() != records * (train ? 5 : 1)) __builtin_trap();
        d.validate();
    } catch (const Error&) {
    }
    return 0;
}
