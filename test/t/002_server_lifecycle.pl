# test/t/002_server_lifecycle.pl — the rtsub server background worker's
# lifecycle: it serves /healthz on rtsub.port, survives a configuration
# reload, is restarted by the postmaster after SIGTERM, leaves a port in use
# alone (WARNING, retried later, no crash), stops quickly with the server,
# and its SQL functions explain when rtsub is not preloaded.
#
# Run by test/run (prove, PostgreSQL::Test::Cluster; TEMP_CONFIG is
# test/logical.conf, which preloads rtsub).
use strict;
use warnings;

use IO::Socket::INET;
use JSON::PP;
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $http_port = PostgreSQL::Test::Cluster::get_free_port();

# SQL definitions of the server's functions (as the extension will have them)
my $functions = q{
CREATE SCHEMA IF NOT EXISTS rtsub_t;
CREATE FUNCTION rtsub_t.server_status(
    OUT pid int, OUT state text, OUT port int, OUT started_at timestamptz,
    OUT http_requests bigint, OUT connections_accepted bigint,
    OUT connections_rejected bigint, OUT bytes_sent bigint)
  RETURNS SETOF record AS 'rtsub', 'rtsub_server_status' LANGUAGE C STRICT;
CREATE FUNCTION rtsub_t.wait_until_running(timeout_ms int DEFAULT 10000)
  RETURNS boolean AS 'rtsub', 'rtsub_wait_until_running' LANGUAGE C STRICT;
};

# One HTTP/1.1 request on a fresh connection: (status, body), or () when
# nothing answers on $port.
sub http_request
{
	my ($method, $path, $port) = @_;
	$port //= $http_port;
	my $sock = IO::Socket::INET->new(
		PeerAddr => '127.0.0.1',
		PeerPort => $port,
		Proto => 'tcp',
		Timeout => 5) or return ();
	print $sock "$method $path HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
	my $response = '';
	eval {
		local $SIG{ALRM} = sub { die "timeout\n" };
		alarm 10;
		while (my $n = sysread($sock, my $buf, 65536)) { $response .= $buf; }
		alarm 0;
	};
	close $sock;
	return () unless $response =~ m{^HTTP/1\.1 (\d+)};
	my $status = $1;
	my ($headers, $body) = split /\r\n\r\n/, $response, 2;
	return ($status, $body // '');
}

# the worker's pid as pg_stat_activity shows it ('' when none)
sub worker_pid
{
	my ($node) = @_;
	return $node->safe_psql('postgres',
		q{SELECT coalesce(max(pid), 0) FROM pg_stat_activity WHERE backend_type = 'rtsub server'});
}

# poll until $check->() is true or $seconds pass; returns the elapsed time or undef
sub wait_for
{
	my ($seconds, $check) = @_;
	my $start = time();
	while (time() - $start < $seconds)
	{
		return time() - $start if $check->();
		usleep(50_000);
	}
	return undef;
}

my $node = PostgreSQL::Test::Cluster->new('server');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'rtsub'
rtsub.port = $http_port
});
$node->start;
$node->safe_psql('postgres', $functions);

# --- serving
is($node->safe_psql('postgres', 'SELECT rtsub_t.wait_until_running(10000)'),
	't', 'wait_until_running() is true');
my $pid = worker_pid($node);
ok($pid > 0, 'the rtsub server worker runs');
my ($status, $body) = http_request('GET', '/healthz');
is($status, 200, '/healthz answers 200');
my $health = eval { decode_json($body) } // {};
is($health->{status}, 'ok', '/healthz says ok');
is($health->{pid}, $pid, '/healthz gives the worker pid');
is( $node->safe_psql('postgres',
		'SELECT state, port, pid FROM rtsub_t.server_status()'),
	"running|$http_port|$pid",
	'server_status() shows the running worker');
($status, $body) = http_request('GET', '/metrics');
like($body, qr/^rtsub_up 1$/m, '/metrics says rtsub_up 1');
($status) = http_request('DELETE', '/healthz');
is($status, 405, 'DELETE answers 405');

# --- configuration reload
$node->safe_psql('postgres',
	q{ALTER SYSTEM SET rtsub.heartbeat_interval = '7s'; SELECT pg_reload_conf()});
usleep(500_000);
is($node->safe_psql('postgres', 'SHOW rtsub.heartbeat_interval'),
	'7s', 'the reloaded setting is visible');
is(worker_pid($node), $pid, 'the worker survives a reload');
($status) = http_request('GET', '/healthz');
is($status, 200, 'and keeps serving');

# --- SIGTERM: exits at once, the postmaster restarts it
my $killed_at = time();
kill 'TERM', $pid;
my $gone = wait_for(5, sub { !kill(0, $pid) });
ok(defined $gone && $gone < 1, 'the worker exits within 1 s of SIGTERM')
  or diag('exit took ' . ($gone // 'more than 5') . ' s');
my $new_pid;
my $back = wait_for(10, sub {
	$new_pid = worker_pid($node);
	return $new_pid > 0 && $new_pid != $pid && (http_request('GET', '/healthz'))[0] == 200;
});
ok(defined $back, 'the postmaster starts a new worker that serves again');
ok(time() - $killed_at < 8, 'within the 5 s restart interval (plus start)')
  or diag('took ' . (time() - $killed_at) . ' s');
($status, $body) = http_request('GET', '/healthz');
is((eval { decode_json($body) } // {})->{pid}, $new_pid, '/healthz reports the new pid');

# --- a second cluster wanting the same port: warns, retries, never crashes
my $other = PostgreSQL::Test::Cluster->new('other');
$other->init;
$other->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'rtsub'
rtsub.port = $http_port
});
$other->start;
$other->safe_psql('postgres', $functions);
ok( defined wait_for(10, sub {
		slurp_file($other->logfile) =~ /WARNING:  rtsub server could not start: could not listen on 127\.0\.0\.1 port $http_port/;
	}),
	'a port in use is a WARNING');
is($other->safe_psql('postgres', 'SELECT rtsub_t.wait_until_running(6000)'),
	'f', 'wait_until_running() is false there after its timeout');
unlike(slurp_file($other->logfile), qr/terminated by signal|server process .* was terminated/,
	'no worker crashed');
($status, $body) = http_request('GET', '/healthz');
is((eval { decode_json($body) } // {})->{pid}, $new_pid, 'the first cluster keeps its port');
$other->stop('fast');

# --- fast shutdown
my $t0 = time();
$node->stop('fast');
my $stop_time = time() - $t0;
ok($stop_time < 5, 'fast shutdown completes in under 5 s')
  or diag("took $stop_time s");
my @answer = http_request('GET', '/healthz');
ok(!@answer, 'nothing listens on the port after shutdown');
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no worker crashed');

# --- without shared_preload_libraries
my $plain = PostgreSQL::Test::Cluster->new('plain');
$plain->init;
$plain->append_conf('postgresql.conf', q{shared_preload_libraries = ''});
$plain->start;
my ($ret, $stdout, $stderr) =
  $plain->psql('postgres', $functions . 'SELECT * FROM rtsub_t.server_status();');
# loading rtsub.so outside shared_preload_libraries must not define
# PGC_POSTMASTER settings (guc.c makes that a FATAL error)
unlike($stderr, qr/cannot create PGC_POSTMASTER variables/,
	'loading rtsub without preloading it is no FATAL error');
like($stderr, qr/ERROR:  rtsub server is not loaded/,
	'server_status() says the server is not loaded');
like($stderr, qr/HINT:  Add rtsub to shared_preload_libraries and restart\./,
	'with a hint');
($ret, $stdout, $stderr) =
  $plain->psql('postgres', 'SELECT rtsub_t.wait_until_running(100)');
like($stderr, qr/ERROR:  rtsub server is not loaded/,
	'so does wait_until_running()');
$plain->stop('fast');

done_testing();
