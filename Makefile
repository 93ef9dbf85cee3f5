# rtsub — PGXS build.  `make && make install` builds and installs the
# extension; `make test` runs every test suite; `make bench` runs the
# benchmarks; `make demo` starts a throw-away demo cluster.

EXTENSION  = rtsub
MODULE_big = rtsub
OBJS = \
	src/rtsub.o \
	src/filter.o \
	src/encode.o \
	src/catalog.o \
	src/decoder.o \
	src/stream.o \
	src/window.o \
	src/snapshot.o \
	src/monitor.o \
	src/audit.o \
	src/evaluate.o \
	src/encode_json.o \
	src/encode_msgpack.o \
	src/protocol.o \
	src/config.o \
	src/auth_jwt.o \
	src/shmem.o \
	src/session.o \
	src/ws_server.o \
	src/worker.o

DATA = $(wildcard sql/rtsub--*.sql)

PG_CONFIG ?= pg_config
DEPS_PC    = libwebsockets msgpack libjwt
PG_CPPFLAGS = -I$(srcdir)/src $(shell pkg-config --cflags $(DEPS_PC))
SHLIB_LINK  = $(shell pkg-config --libs $(DEPS_PC))
PG_CFLAGS   = -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare

# pg_regress suites: sql/<name>.sql against expected/<name>.out
REGRESS      = catalog filter plugin_json plugin_types plugin_partition
REGRESS_OPTS = --temp-config=$(srcdir)/test/logical.conf

EXTRA_CLEAN = results regression.diffs regression.out tmp_check tmp_install log test/out

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

.PHONY: test bench demo deps
deps:
	bash test/deps.sh
test:
	bash test/run
bench:
	bash test/bench/run
	bash test/bench/run-eval
demo:
	bash test/demo

# every object depends on every header of ours (PGXS tracks no header
# dependencies unless PostgreSQL was configured with --enable-depend)
$(OBJS): $(wildcard $(srcdir)/src/*.h)
