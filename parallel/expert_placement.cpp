#include "parallel/expert_placement.h"

#include <algorithm>

#include "core/error.h"

namespace tandem {

ExpertPlacement::ExpertPlacement(std::vector<ExpertLocation> table, int num_ranks)
    : table_(std::move(table)) {
  TANDEM_CHECK(num_ranks >= 1, "expert placement: {} ranks", num_ranks);
  experts_of_rank_.resize(num_ranks);
  for (int64_t e = 0; e < int64_t(table_.size()); ++e) {
    const ExpertLocation& loc = table_[e];
    TANDEM_CHECK(loc.rank >= 0 && loc.rank < num_ranks, "expert {} placed on rank {} of {}", e,
                 loc.rank, num_ranks);
    auto& locals = experts_of_rank_[loc.rank];
    TANDEM_CHECK(loc.local >= 0 && loc.local < int64_t(table_.size()),
                 "expert {}: local index {} out of range", e, loc.local);
    if (int64_t(locals.size()) <= loc.local) locals.resize(loc.local + 1, -1);
    TANDEM_CHECK(locals[loc.local] < 0, "experts {} and {} both at rank {} local {}",
                 locals[loc.local], e, loc.rank, loc.local);
    locals[loc.local] = e;
  }
  for (int r = 0; r < num_ranks; ++r) {
    const auto& locals = experts_of_rank_[r];
    TANDEM_CHECK(std::find(locals.begin(), locals.end(), -1) == locals.end(),
                 "rank {}: local expert indices are not dense", r);
  }
}

ExpertPlacement ExpertPlacement::contiguous(int64_t num_experts, int num_ranks) {
  TANDEM_CHECK(num_ranks >= 1 && num_experts >= num_ranks && num_experts % num_ranks == 0,
               "--ep {} must divide the {} routed experts", num_ranks, num_experts);
  const int64_t per_rank = num_experts / num_ranks;
  std::vector<ExpertLocation> table(num_experts);
  for (int64_t e = 0; e < num_experts; ++e) table[e] = {int(e / per_rank), e % per_rank};
  return ExpertPlacement(std::move(table), num_ranks);
}

const ExpertLocation& ExpertPlacement::location(int64_t expert) const {
  TANDEM_CHECK(expert >= 0 && expert < num_experts(), "expert id {} outside [0, {})", expert,
               num_experts());
  return table_[expert];
}

int64_t ExpertPlacement::num_local_experts(int rank) const {
  TANDEM_CHECK(rank >= 0 && rank < num_ranks(), "rank {} outside [0, {})", rank, num_ranks());
  return int64_t(experts_of_rank_[rank].size());
}

int64_t ExpertPlacement::max_local_experts() const {
  int64_t n = 0;
  for (const auto& locals : experts_of_rank_) n = std::max(n, int64_t(locals.size()));
  return n;
}

int64_t ExpertPlacement::global_expert(int rank, int64_t local) const {
  TANDEM_CHECK(local >= 0 && local < num_local_experts(rank), "rank {} has no local expert {}",
               rank, local);
  return experts_of_rank_[rank][local];
}

}  // namespace tandem
