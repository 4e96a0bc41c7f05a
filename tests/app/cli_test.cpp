// The real `tandem` binary: its commands work end to end, and bad input is a clear error that
// names the flag or the file (exit code non-zero, nothing on stdout).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "tokenizer/tokenizer.h"
#include "tests/common/tokenizer_dir.h"

namespace {

namespace fs = std::filesystem;

struct CliRun {
  int status = -1;
  std::string out;  // stdout and stderr together
};

CliRun run(const std::string& args, const std::string& stdin_text = "") {
  const fs::path input = fs::temp_directory_path() / ("tandem_cli_in_" + std::to_string(::getpid()));
  std::ofstream(input) << stdin_text;
  const std::string cmd = std::string(TANDEM_BINARY) + " " + args + " < " + input.string() + " 2>&1";
  CliRun r;
  FILE* p = ::popen(cmd.c_str(), "r");
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = ::pclose(p);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  fs::remove(input);
  return r;
}

class Cli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = fs::temp_directory_path() / ("tandem_cli_model_" + std::to_string(::getpid()));
    const CliRun r = run("make-model --preset tiny --layers 2 --out " + model_.string());
    ASSERT_EQ(r.status, 0) << r.out;
  }
  static void TearDownTestSuite() { fs::remove_all(model_); }
  static inline fs::path model_;
};

TEST_F(Cli, GenerateIsGreedyAndDeterministic) {
  const std::string args = "--log-level warn generate --model-path " + model_.string() +
                           " --prompt-ids 0,3923,344,245 --max-tokens 6 --ignore-eos";
  const CliRun a = run(args), b = run(args);
  ASSERT_EQ(a.status, 0) << a.out;
  EXPECT_NE(a.out.find("\"output_ids\""), std::string::npos) << a.out;
  // Same output ids both times (greedy).
  auto ids_of = [](const std::string& s) {
    const size_t at = s.find("\"output_ids\"");
    return at == std::string::npos ? std::string() : s.substr(at, s.find(']', at) - at);
  };
  EXPECT_EQ(ids_of(a.out), ids_of(b.out));
  EXPECT_FALSE(ids_of(a.out).empty());
}

TEST_F(Cli, BadInputNamesTheFlagOrFile) {
  struct Case {
    std::string args;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {"generate --model-path " + model_.string() + " --prompt-ids 1,x,3", "--prompt-ids"},
      {"generate --model-path " + model_.string() + " --prompt-ids 1,99999999", "99999999"},
      {"generate --model-path /nonexistent --prompt-ids 1", "/nonexistent"},
      {"generate --model-path " + model_.string() + " --prompt-ids 1 --page-size 65", "--page-size"},
      {"make-model --preset huge --out /tmp/x", "--preset"},
      {"make-model --preset tiny --dtype int4 --out /tmp/x", "--dtype"},
      {"make-model --preset tiny", "--out"},
      {"--log-level loud generate --model-path " + model_.string() + " --prompt-ids 1", "--log-level"},
      {"tokenize --tokenizer /nonexistent", "/nonexistent"},
      {"bench --tokenizer " + model_.string() + " --base-url ftp://x", "--base-url"},
      {"generate --model-path " + model_.string() + " --prompt-ids 1 --load-format pt", "--load-format"},
      {"serve --model-path " + model_.string() + " --load-format pt", "--load-format"},
      {"generate --model-path " + model_.string() + " --prompt-ids 1 --cuda-graph-max-bs -1",
       "--cuda-graph-max-bs"},
      {"serve --model-path " + model_.string() + " --cuda-graph-max-bs 5000", "--cuda-graph-max-bs"},
      {"no-such-command", "subcommand"},
  };
  for (const Case& c : cases) {
    const CliRun r = run(c.args);
    EXPECT_NE(r.status, 0) << c.args;
    EXPECT_NE(r.out.find(c.expect), std::string::npos) << c.args << "\n" << r.out;
  }
}

TEST_F(Cli, ModelWithMissingTensorFileIsNamed) {
  const fs::path broken = model_.string() + "_broken";
  fs::create_directories(broken);
  fs::copy_file(model_ / "config.json", broken / "config.json", fs::copy_options::overwrite_existing);
  const CliRun r = run("generate --model-path " + broken.string() + " --prompt-ids 1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find(broken.string()), std::string::npos) << r.out;
  fs::remove_all(broken);
}

TEST_F(Cli, TokenizeMatchesTheLibrary) {
  const auto found = tandem::test::deepseek_v3_tokenizer_dir();
  if (!found) GTEST_SKIP() << "DeepSeek-V3 tokenizer files not found (set TANDEM_TOKENIZER_DIR)";
  const fs::path dir = *found;
  const auto tok = tandem::tokenizer::Tokenizer::load(dir);
  const std::string text = "Hello, world! 你好 123";
  const CliRun r = run("tokenize --tokenizer " + dir.string(), text + "\n");
  ASSERT_EQ(r.status, 0) << r.out;
  std::string expected = "[";
  for (int32_t id : tok.encode(text)) expected += (expected.size() > 1 ? "," : "") + std::to_string(id);
  expected += "]";
  EXPECT_NE(r.out.find(expected), std::string::npos) << r.out << " vs " << expected;
}

}  // namespace
