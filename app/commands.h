// The `tandem` subcommands. Each lives in its own cmd_*.cpp and registers its flags (one table
// of flags per command, declared once with field, help and default: STYLE.md 6) and a
// callback on the CLI11 app. Callbacks return a process exit code through `exit_code`.
#pragma once

#include <CLI/CLI.hpp>

namespace tandem::app {

void add_generate_command(CLI::App& app, int& exit_code);
void add_make_model_command(CLI::App& app, int& exit_code);
void add_tokenize_command(CLI::App& app, int& exit_code);
void add_bench_command(CLI::App& app, int& exit_code);
void add_serve_command(CLI::App& app, int& exit_code);
void add_router_command(CLI::App& app, int& exit_code);

}  // namespace tandem::app
