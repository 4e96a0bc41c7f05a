#include <CLI/CLI.hpp>

int main(int argc, char** argv) {
  CLI::App app{"tandem: DeepSeek-V3 inference server"};
  CLI11_PARSE(app, argc, argv);
  return 0;
}
