// The `tandem` command: one binary for every role (DESIGN.md "Processes").
#include <cstdio>
#include <exception>

#include "app/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "core/thread_pool.h"

int main(int argc, char** argv) {
  CLI::App app{"tandem: DeepSeek-V3-architecture inference (CPU reference backend, CUDA on H200)"};
  app.require_subcommand(1);
  std::string log_level;
  int threads = 0;
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off (default info)");
  app.add_option("--threads", threads, "CPU threads for the CPU backend (default: all cores)")
      ->check(CLI::Range(1, 4096));
  int exit_code = 0;
  tandem::app::add_generate_command(app, exit_code);
  tandem::app::add_make_model_command(app, exit_code);
  tandem::app::add_tokenize_command(app, exit_code);
  tandem::app::add_bench_command(app, exit_code);
  tandem::app::add_serve_command(app, exit_code);
  tandem::app::add_router_command(app, exit_code);
  app.parse_complete_callback([&] {
    if (!tandem::log_init(log_level)) {
      throw CLI::ValidationError("--log-level", "unknown level '" + log_level + "'");
    }
    if (threads > 0) tandem::set_cpu_num_threads(threads);
  });
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const tandem::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return exit_code;
}
