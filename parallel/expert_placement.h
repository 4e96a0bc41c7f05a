// Where each routed expert lives under expert parallelism: a table expert -> (rank, local
// index), and its inverse rank -> local experts. `--ep N` places each MoE layer's experts in
// contiguous ranges (rank r owns [r * E/N, (r + 1) * E/N)); the table form leaves room for
// redundant experts and an EPLB rebalancer, which will change the table, not its users.
// Immutable after construction; safe to share between threads.
#pragma once

#include <cstdint>
#include <vector>

namespace tandem {

struct ExpertLocation {
  int rank = 0;
  int64_t local = 0;  // index among that rank's experts
};

class ExpertPlacement {
 public:
  // table[e]: where expert e lives. Each rank's local indices must be exactly 0..n-1.
  ExpertPlacement(std::vector<ExpertLocation> table, int num_ranks);

  // --ep N: contiguous equal ranges. num_experts must be a multiple of num_ranks.
  static ExpertPlacement contiguous(int64_t num_experts, int num_ranks);

  int64_t num_experts() const { return int64_t(table_.size()); }
  int num_ranks() const { return int(experts_of_rank_.size()); }
  const ExpertLocation& location(int64_t expert) const;
  int64_t num_local_experts(int rank) const;
  int64_t max_local_experts() const;
  // The global id of `rank`'s local expert `local`.
  int64_t global_expert(int rank, int64_t local) const;
  bool is_local(int rank, int64_t expert) const { return location(expert).rank == rank; }

 private:
  std::vector<ExpertLocation> table_;                   // [E]
  std::vector<std::vector<int64_t>> experts_of_rank_;  // [ranks][local] -> global
};

}  // namespace tandem
