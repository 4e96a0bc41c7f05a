// tandem router: the PD load balancer in front of `tandem serve --role prefill|decode` servers
// (router/, docs/router.md). The flag table below is the only place a router flag is declared.
#include "app/commands.h"
#include "router/router.h"

namespace tandem::app {

void add_router_command(CLI::App& app, int& exit_code) {
  auto c = std::make_shared<router::RouterConfig>();
  CLI::App* cmd = app.add_subcommand(
      "router",
      "PD load balancer: serves the OpenAI API and sends each generation request to one prefill and one "
      "decode server (`tandem serve --role prefill|decode`), returning the decode server's answer");
  cmd->footer(
      "Each request goes to a healthy prefill and a healthy decode server, chosen by --policy, with\n"
      "bootstrap_host/bootstrap_port/bootstrap_room added to its body. Upstreams are polled on /health and\n"
      "/pd_info every --health-interval-s; unhealthy ones are skipped until they answer again.\n"
      "Example: tandem router --prefill http://10.0.0.1:30000 --decode http://10.0.0.2:30000 --port 8000");
  // clang-format off
  cmd->add_option("--prefill", c->prefill_urls, "Prefill server URL http://HOST:PORT (repeat for several); HOST is what decode servers are told to reach")->required()->take_all();
  cmd->add_option("--decode", c->decode_urls, "Decode server URL http://HOST:PORT (repeat for several)")->required()->take_all();
  cmd->add_option("--host", c->host, "Address to bind; 0.0.0.0 for every interface")->capture_default_str();
  cmd->add_option("--port", c->port, "Port to listen on (0: any free port, printed at start)")->capture_default_str()->check(CLI::Range(0, 65535));
  cmd->add_option("--policy", c->policy, "How a server of each role is picked among the healthy ones: round-robin, or least-load (fewest requests in flight through this router)")->capture_default_str()->check(CLI::IsMember({"round-robin", "least-load"}));
  cmd->add_option("--health-interval-s", c->health_interval_s, "Seconds between health polls of each upstream (/health and /pd_info)")->capture_default_str()->check(CLI::Range(0.01, 3600.0));
  cmd->add_option("--request-timeout-s", c->request_timeout_s, "Longest time one request may take end to end; then 504 and both upstream requests are closed")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--api-key", c->api_key, "Require `Authorization: Bearer KEY` on every endpoint but /health and /metrics (the header is passed on to the upstreams)")->envname("TANDEM_API_KEY");
  cmd->add_option("--http-threads", c->http_threads, "Connections served at once (one thread each: cpp-httplib's model, docs/router.md)")->capture_default_str()->check(CLI::Range(1, 65536));
  // clang-format on
  cmd->callback([c, &exit_code] { exit_code = router::run_router(*c); });
}

}  // namespace tandem::app
