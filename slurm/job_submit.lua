--[[
asbb budget check for SLURM (job_submit/lua, SLURM 22.05 or newer, Lua 5.1).

Every submission (and every change of a pending or running job's time limit or partition) is
priced and held by asbb before slurmctld accepts it:

  * the job's account (SLURM's default account, else `default_account` below), partition (the
    default partition when none is given), nodes, CPUs, memory, GPUs (gres/TRES), time limit
    (the partition's default or maximum when none is given), array size and heterogeneous
    component are validated and sent to asbb-checkd (POST /api/v1/budget/check) over one
    connection kept open between checks (luasocket; curl when it is missing), or to
    `asbb check --json`, under a hard timeout;
  * allowed: the hold id is written into the job's AdminComment (`asbb:hold-17`), which users
    cannot change; the jobcomp hook reads it back when the job ends;
  * denied: the job is refused and sbatch shows the reason;
  * asbb unreachable, too slow or broken: the configured fail policy applies (open: accept
    without a hold and mark AdminComment `asbb:unchecked`; closed: refuse), and it is logged
    every time it applies.

Settings live in a key = value file (CONFIG_FILE below, re-read on every call, so a change needs
no restart); see slurm/asbb_submit.conf. slurmctld runs this under its locks: nothing here waits
longer than `timeout` seconds.
--]]

local CONFIG_FILE = "/etc/slurm/asbb_submit.conf"

-- SLURM's "not set" values (slurm.h): NO_VAL, NO_VAL16, INFINITE.
local NO_VAL = 4294967294
local NO_VAL16 = 65534
local INFINITE = 4294967295
-- Memory and other 64-bit values at or above this are flags or NO_VAL64, not sizes.
local HUGE64 = 2 ^ 62

local DEFAULTS = {
	method = "http",
	url = "http://127.0.0.1:8080/api/v1/budget/check",
	header_file = "",
	curl = "/usr/bin/curl",
	asbb = "/usr/local/bin/asbb",
	asbb_config = "",
	timeout = "2",
	fail_policy = "open",
	default_account = "",
	cluster = "",
	exempt_partitions = "",
}

---------------------------------------------------------------------------------------------
-- Helpers

local function log(fmt, ...)
	slurm.log_info("asbb: " .. fmt, ...)
end

local function read_config()
	local c = {}
	for k, v in pairs(DEFAULTS) do
		c[k] = v
	end
	local f = io.open(CONFIG_FILE, "r")
	if f then
		for line in f:lines() do
			local k, v = line:match("^%s*([%w_]+)%s*=%s*(.-)%s*$")
			if k and not line:match("^%s*#") then
				c[k] = v
			end
		end
		f:close()
	end
	return c
end

-- Values go into a shell command and a JSON body: only these characters pass.
local PATTERNS = {
	account = "^[a-z0-9][a-z0-9_.-]*$",
	partition = "^[A-Za-z0-9][A-Za-z0-9_.-]*$",
	user = "^[A-Za-z0-9_.@-]+$",
	array = "^[0-9][0-9,%%:-]*$",
	gres = "^[A-Za-z0-9_:/=,.-]+$",
	plan = "^[A-Za-z0-9_./-]+$",
	id = "^[A-Za-z0-9_.:+-]+$",
	word = "^[A-Za-z0-9_.-]+$",
}

local function valid(kind, value)
	return type(value) == "string" and #value <= 256 and value:match(PATTERNS[kind]) ~= nil
end

local function set(n)
	return type(n) == "number" and n ~= NO_VAL and n ~= NO_VAL16 and n ~= INFINITE and n < HUGE64
end

local function in_list(list, name)
	for item in string.gmatch(list or "", "[^,%s]+") do
		if item == name then
			return true
		end
	end
	return false
end

-- A small JSON decoder: enough for asbb-checkd's answers (objects, arrays, strings with
-- escapes, numbers, true/false/null).
local function json_decode(s)
	local pos = 1
	local function ws()
		pos = s:find("[^ \t\r\n]", pos) or (#s + 1)
	end
	local value
	local escapes = { b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }
	-- A string is taken in runs up to the next quote or backslash, not a character at a time:
	-- the answer is decoded inside slurmctld, for every job.
	local function str()
		local out = {}
		pos = pos + 1
		while true do
			local at = s:find('["\\]', pos)
			if not at then
				error("unterminated string")
			end
			if at > pos then
				out[#out + 1] = s:sub(pos, at - 1)
			end
			if s:sub(at, at) == '"' then
				pos = at + 1
				return table.concat(out)
			end
			local e = s:sub(at + 1, at + 1)
			if e == "u" then
				local code = tonumber(s:sub(at + 2, at + 5), 16) or 63
				out[#out + 1] = code < 128 and string.char(code) or "?"
				pos = at + 6
			else
				out[#out + 1] = escapes[e] or e
				pos = at + 2
			end
		end
	end
	value = function()
		ws()
		local c = s:sub(pos, pos)
		if c == "{" then
			local obj = {}
			pos = pos + 1
			ws()
			if s:sub(pos, pos) == "}" then
				pos = pos + 1
				return obj
			end
			while true do
				ws()
				if s:sub(pos, pos) ~= '"' then
					error("expected a key")
				end
				local k = str()
				ws()
				if s:sub(pos, pos) ~= ":" then
					error("expected ':'")
				end
				pos = pos + 1
				obj[k] = value()
				ws()
				local d = s:sub(pos, pos)
				pos = pos + 1
				if d == "}" then
					return obj
				elseif d ~= "," then
					error("expected ',' or '}'")
				end
			end
		elseif c == "[" then
			local arr = {}
			pos = pos + 1
			ws()
			if s:sub(pos, pos) == "]" then
				pos = pos + 1
				return arr
			end
			while true do
				arr[#arr + 1] = value()
				ws()
				local d = s:sub(pos, pos)
				pos = pos + 1
				if d == "]" then
					return arr
				elseif d ~= "," then
					error("expected ',' or ']'")
				end
			end
		elseif c == '"' then
			return str()
		elseif s:sub(pos, pos + 3) == "true" then
			pos = pos + 4
			return true
		elseif s:sub(pos, pos + 4) == "false" then
			pos = pos + 5
			return false
		elseif s:sub(pos, pos + 3) == "null" then
			pos = pos + 4
			return nil
		else
			local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
			if not num or num == "" then
				error("unexpected character at " .. pos)
			end
			pos = pos + #num
			return tonumber(num)
		end
	end
	local ok, result = pcall(value)
	if not ok then
		return nil, result
	end
	return result
end

local function shell_quote(s)
	return "'" .. s:gsub("'", "'\\''") .. "'"
end

---------------------------------------------------------------------------------------------
-- Building the request

local function default_partition(part_list)
	if type(part_list) ~= "table" then
		return nil, nil
	end
	for name, part in pairs(part_list) do
		if part.flag_default == 1 or part.flag_default == true then
			return name, part
		end
	end
	return nil, nil
end

local function json_field(fields, key, value)
	if value == nil then
		return
	end
	if type(value) == "number" then
		fields[#fields + 1] = string.format('"%s":%d', key, value)
	else
		fields[#fields + 1] = string.format('"%s":"%s"', key, value)
	end
end

-- Reads what the check needs from a job description (and, for a modification, the job as it
-- is). Returns the request fields or nil and a message for the user.
local function describe(cfg, job_desc, part_list, submit_uid, job_rec)
	local r = {}
	local account = job_desc.account
	if (account == nil or account == "") and job_rec then
		account = job_rec.account
	end
	if account == nil or account == "" then
		account = job_desc.default_account
	end
	if (account == nil or account == "") and cfg.default_account ~= "" then
		account = cfg.default_account
	end
	if account == nil or account == "" then
		return nil, "no account: submit with --account=<your budget account>"
	end
	account = string.lower(account)
	if not valid("account", account) then
		return nil, "the account name '" .. account .. "' contains characters asbb does not accept"
	end
	r.account = account

	local partition = job_desc.partition
	if (partition == nil or partition == "") and job_rec then
		partition = job_rec.partition
	end
	local part
	if partition == nil or partition == "" then
		partition, part = default_partition(part_list)
	else
		-- A list of partitions is priced at the first; SLURM may start it in any of them.
		partition = partition:match("^[^,]+")
		if type(part_list) == "table" then
			part = part_list[partition]
		end
	end
	if partition == nil then
		return nil, "no partition: submit with --partition"
	end
	if not valid("partition", partition) then
		return nil, "the partition name '" .. partition .. "' contains characters asbb does not accept"
	end
	r.partition = partition
	if in_list(cfg.exempt_partitions, partition) then
		return r, nil, true
	end

	-- Time limit in minutes: the job's, else the partition's default, else its maximum.
	local limit = job_desc.time_limit
	if not set(limit) and job_rec then
		limit = job_rec.time_limit
	end
	if not set(limit) and part then
		if set(part.default_time) then
			limit = part.default_time
		elseif set(part.max_time) then
			limit = part.max_time
		end
	end
	if set(limit) then
		r.wall_time = limit
	elseif limit == INFINITE then
		r.wall_time = "UNLIMITED"
	end

	if job_rec then
		-- A modification: the job's resources as SLURM recorded them.
		local tres = job_rec.tres_req_str
		if type(tres) == "string" and tres ~= "" then
			if not valid("gres", tres) then
				return nil, "the job's resources (" .. tres .. ") cannot be priced"
			end
			r.tres = tres
		end
		if set(job_rec.array_task_cnt) and job_rec.array_task_cnt > 1 then
			r.array_size = job_rec.array_task_cnt
		end
	else
		local nodes = set(job_desc.min_nodes) and job_desc.min_nodes or 1
		if nodes < 1 then
			nodes = 1
		end
		local tasks = set(job_desc.num_tasks) and job_desc.num_tasks or nodes
		local cpt = set(job_desc.cpus_per_task) and job_desc.cpus_per_task or 1
		local cpus = tasks * cpt
		if set(job_desc.pn_min_cpus) and job_desc.pn_min_cpus * nodes > cpus then
			cpus = job_desc.pn_min_cpus * nodes
		end
		if cpus < nodes then
			cpus = nodes
		end
		r.nodes = nodes
		r.cpus = cpus
		if set(job_desc.min_mem_per_cpu) and job_desc.min_mem_per_cpu > 0 then
			r.memory_per_cpu = string.format("%dM", job_desc.min_mem_per_cpu)
		elseif set(job_desc.min_mem_per_node) and job_desc.min_mem_per_node > 0 then
			r.memory = string.format("%dM", job_desc.min_mem_per_node)
		end
		-- GPUs: --gres / --gpus-per-node (per node), --gpus (per job), --gpus-per-task.
		local per_node = job_desc.tres_per_node
		if type(per_node) == "string" and per_node ~= "" then
			if not valid("gres", per_node) then
				return nil, "the gres request '" .. per_node .. "' contains characters asbb does not accept"
			end
			r.gres = per_node
		end
		local per_job = job_desc.tres_per_job
		if type(per_job) == "string" and per_job ~= "" then
			if not valid("gres", per_job) then
				return nil, "the GPU request '" .. per_job .. "' contains characters asbb does not accept"
			end
			r.gpus = per_job
		end
		local per_task = job_desc.tres_per_task
		if type(per_task) == "string" and per_task:match("gpu") then
			local n = tonumber(per_task:match("gpu[^,]*:(%d+)") or per_task:match("gpu[^,]*=(%d+)"))
			if n and n > 0 and r.gpus == nil then
				r.gpus = tostring(n * tasks)
			end
		end
		local array = job_desc.array_inx
		if type(array) == "string" and array ~= "" then
			if not valid("array", array) then
				return nil, "the array spec '" .. array .. "' contains characters asbb does not accept"
			end
			r.array = array
		end
	end

	local user = job_desc.user_name
	if (user == nil or user == "") and submit_uid then
		user = tostring(submit_uid)
	end
	if valid("user", user) then
		r.user_id = user
	end
	if cfg.cluster ~= "" and valid("word", cfg.cluster) then
		r.cluster = cfg.cluster
	end
	-- An ASBA plan named in the job's comment: --comment "asba_plan=<id or path>".
	local comment = job_desc.comment
	if type(comment) == "string" then
		local plan = comment:match("asba_plan=([^%s,;]+)")
		if plan and valid("plan", plan) then
			r.plan = plan
		end
	end
	return r, nil, false
end

local function request_json(r)
	local fields = {}
	for _, k in ipairs({
		"account", "partition", "nodes", "cpus", "gpus", "gres", "tres", "memory",
		"memory_per_cpu", "wall_time", "user_id", "array", "array_size", "plan",
		"request_id", "cluster", "job_id", "replace_hold",
	}) do
		json_field(fields, k, r[k])
	end
	return "{" .. table.concat(fields, ",") .. "}"
end

---------------------------------------------------------------------------------------------
-- Asking asbb

-- luasocket (Debian: lua-socket) talks HTTP in-process; without it each check starts curl,
-- which costs several milliseconds per submission.
local have_socket, socket = pcall(require, "socket")

local function read_file(path)
	local f = io.open(path, "r")
	if not f then
		return nil
	end
	local t = f:read("*a")
	f:close()
	return t
end

-- The connection to asbb-checkd, kept open between checks: slurmctld runs this script for one
-- job at a time, and a kept connection spares each check a TCP handshake and asbb-checkd a
-- hand-over to a worker. asbb-checkd closes a connection idle for 2 s, and one it had before a
-- restart is gone: a kept connection found closed is replaced before the check is sent, and a
-- check that fails on a kept connection is sent once more on a new one, within the same
-- deadline. That is safe: it carries the same request_id, so asbb-checkd answers a check it
-- had received with its first answer and holds nothing twice.
local kept = nil -- { sock = the connection, peer = "host:port" }

local function drop_kept()
	if kept then
		kept.sock:close()
		kept = nil
	end
end

-- Reads one HTTP answer (status line, headers, a Content-Length body, or to the end when the
-- answer has none). Returns the status, the body and whether the server keeps the connection
-- open, or nil, why, and whether nothing at all had arrived.
local function read_answer(c, deadline)
	local function left()
		return math.max(deadline - socket.gettime(), 0.001)
	end
	c:settimeout(left())
	local line, err = c:receive("*l")
	if not line then
		return nil, err, true
	end
	local status = tonumber(line:match("^HTTP/1%.%d (%d%d%d)"))
	if not status then
		return nil, "not an HTTP answer", false
	end
	local length, keep = nil, true
	while true do
		c:settimeout(left())
		line, err = c:receive("*l")
		if not line then
			return nil, "the answer broke off (" .. tostring(err) .. ")", false
		end
		if line == "" then
			break
		end
		local name, value = line:match("^([^:]+):%s*(.-)%s*$")
		name = name and name:lower()
		if name == "content-length" then
			length = tonumber(value)
		elseif name == "connection" and value:lower():find("close") then
			keep = false
		end
	end
	if length then
		c:settimeout(left())
		local body, e = c:receive(length)
		if not body then
			return nil, "the answer broke off (" .. tostring(e) .. ")", false
		end
		return status, body, keep
	end
	local parts = {}
	while true do
		c:settimeout(left())
		local data, e, partial = c:receive(8192)
		local got = data or partial
		if got and #got > 0 then
			parts[#parts + 1] = got
		end
		if e == "closed" then
			break
		elseif e then
			return nil, "the answer broke off (" .. tostring(e) .. ")", false
		end
	end
	return status, table.concat(parts), false
end

-- One POST over a plain socket, every step within the same deadline. Returns the status and
-- the body, or nil and why.
local function post_socket(cfg, body, timeout)
	local host, port, path = cfg.url:match("^http://([%w%.%-]+):(%d+)(/.*)$")
	if not host then
		host, path = cfg.url:match("^http://([%w%.%-]+)(/.*)$")
		port = 80
	end
	if not host then
		return nil, "url must be http://HOST[:PORT]/PATH"
	end
	local deadline = socket.gettime() + timeout
	local auth = ""
	if cfg.header_file ~= "" then
		local h = read_file(cfg.header_file)
		if not h then
			return nil, "cannot read header_file " .. cfg.header_file
		end
		auth = h:gsub("%s+$", "") .. "\r\n"
	end
	local req = "POST " .. path .. " HTTP/1.1\r\nHost: " .. host .. "\r\nContent-Type: application/json\r\n"
		.. auth .. "Content-Length: " .. #body .. "\r\nConnection: keep-alive\r\n\r\n" .. body
	local peer = host .. ":" .. tostring(port)
	if kept and kept.peer ~= peer then
		drop_kept()
	end
	if kept then
		-- Nothing is due on an idle connection: if it reads, asbb-checkd has closed it.
		local readable = socket.select({ kept.sock }, nil, 0)
		if readable and #readable > 0 then
			drop_kept()
		end
	end
	for attempt = 1, 2 do
		local c, reused = nil, kept ~= nil
		if reused then
			c = kept.sock
			kept = nil
		else
			c = socket.tcp()
			c:settimeout(math.max(deadline - socket.gettime(), 0.001))
			local ok, err = c:connect(host, tonumber(port))
			if not ok then
				c:close()
				return nil, "cannot connect to " .. cfg.url .. ": " .. tostring(err)
			end
			c:setoption("tcp-nodelay", true)
		end
		c:settimeout(math.max(deadline - socket.gettime(), 0.001))
		local ok, err = c:send(req)
		local status, rbody, third
		if ok then
			-- An answer: status, body, whether the connection stays open. None: nil, why,
			-- whether nothing at all had arrived.
			status, rbody, third = read_answer(c, deadline)
		else
			rbody, third = "cannot send the check: " .. tostring(err), true
		end
		if status then
			if third then
				kept = { sock = c, peer = peer }
			else
				c:close()
			end
			return status, rbody
		end
		c:close()
		if rbody == "timeout" then
			return nil, "no answer within " .. timeout .. " s (timeout)"
		end
		-- A kept connection that asbb-checkd closed just as the check went out: once more, on
		-- a new one.
		if not (reused and third and attempt == 1) then
			if third and ok then
				return nil, "no answer (" .. tostring(rbody) .. ")"
			end
			return nil, rbody
		end
	end
	return nil, "no answer"
end

-- Returns the decoded answer and the HTTP status, or nil and why it failed.
local function ask(cfg, r)
	local timeout = tonumber(cfg.timeout) or 2
	local cmd
	if cfg.method == "http" and have_socket then
		local status, body = post_socket(cfg, request_json(r), timeout)
		if not status then
			return nil, nil, body
		end
		local answer = json_decode(body)
		if type(answer) ~= "table" then
			return nil, status, "unreadable answer (HTTP " .. status .. ")"
		end
		return answer, status, nil
	end
	if cfg.method == "command" then
		local args = { "timeout", "-k", "1", tostring(timeout), shell_quote(cfg.asbb) }
		if cfg.asbb_config ~= "" then
			args[#args + 1] = "--config " .. shell_quote(cfg.asbb_config)
		end
		args[#args + 1] = "check --json"
		local flags = {
			account = "--account", partition = "--partition", nodes = "--nodes", cpus = "--cpus",
			gpus = "--gpus", gres = "--gres", memory = "--memory", memory_per_cpu = "--memory-per-cpu",
			wall_time = "--wall-time", user_id = "--user", array = "--array",
			array_size = "--array-size", plan = "--plan", request_id = "--request-id",
			cluster = "--cluster", job_id = "--job", replace_hold = "--replace-hold",
		}
		if r.wall_time == nil then
			r.wall_time = "UNLIMITED"
		end
		for k, flag in pairs(flags) do
			if r[k] ~= nil then
				args[#args + 1] = flag .. " " .. shell_quote(tostring(r[k]))
			end
		end
		cmd = table.concat(args, " ") .. " 2>/dev/null; echo; echo $?"
	else
		local args = {
			shell_quote(cfg.curl), "-sS", "--max-time", tostring(timeout),
			"--connect-timeout", tostring(timeout), "-X", "POST",
			"-H", "'Content-Type: application/json'",
		}
		if cfg.header_file ~= "" then
			-- The token stays in the file: a command line is visible to every local user.
			args[#args + 1] = "-H @" .. shell_quote(cfg.header_file)
		end
		args[#args + 1] = "--data-binary " .. shell_quote(request_json(r))
		args[#args + 1] = "-w '\\n%{http_code}'"
		args[#args + 1] = shell_quote(cfg.url)
		cmd = table.concat(args, " ") .. " 2>&1"
	end
	local p = io.popen(cmd, "r")
	if not p then
		return nil, nil, "could not run " .. cfg.method
	end
	local out = p:read("*a") or ""
	p:close()
	local body, status = out:match("^(.*)\n(%d+)%s*$")
	status = tonumber(status)
	if cfg.method == "command" then
		-- asbb check exits 0 (allowed) or 3 (denied) with its answer; 1 with a refusal of the
		-- request; anything else (124: timed out) is a failure of the check itself.
		if status == 0 or status == 3 then
			status = 200
		elseif status == 1 and body and body:match('"reason"') then
			status = 400
		else
			return nil, nil, "asbb check exited " .. tostring(status)
		end
	end
	if not status or status == 0 then
		return nil, nil, "no answer (" .. (out:gsub("%s+$", ""):sub(1, 200)) .. ")"
	end
	local answer = json_decode(body or "")
	if type(answer) ~= "table" then
		return nil, status, "unreadable answer (HTTP " .. status .. ")"
	end
	return answer, status, nil
end

local function attach(job_desc, comment, tag)
	local old = comment or ""
	old = old:gsub("%s*asbb:[%w-]+", "")
	if old ~= "" then
		job_desc.admin_comment = old .. " " .. tag
	else
		job_desc.admin_comment = tag
	end
end

-- Prices and holds; returns slurm.SUCCESS or slurm.ERROR.
local function decide(cfg, job_desc, r, what, old_comment)
	local answer, status, failure = ask(cfg, r)
	if answer and status == 200 and answer.available == true then
		if answer.transaction_id then
			attach(job_desc, old_comment, "asbb:" .. answer.transaction_id)
			log("%s of %s/%s: %s of $%s held (estimate $%s)", what, r.account, r.partition,
				answer.transaction_id, tostring(answer.hold_amount), tostring(answer.estimated_cost))
		else
			log("%s of %s/%s: allowed, nothing held (%s)", what, r.account, r.partition,
				tostring(answer.reason))
		end
		return slurm.SUCCESS
	end
	if answer and status and status < 500 and status ~= 401 and answer.available == false then
		local msg = tostring(answer.message or "refused")
		log("%s of %s/%s refused: %s (%s)", what, r.account, r.partition, msg, tostring(answer.reason))
		slurm.log_user("asbb: job refused: %s (%s)", msg, tostring(answer.reason))
		return slurm.ERROR
	end
	local why = failure or ("HTTP " .. tostring(status) .. " " .. tostring(answer and answer.reason))
	if cfg.fail_policy == "closed" then
		log("check of %s/%s failed: %s; fail_policy=closed: job refused", r.account, r.partition, why)
		slurm.log_user("asbb: the budget check is unavailable (%s); job refused, try again later", why)
		return slurm.ERROR
	end
	log("check of %s/%s failed: %s; fail_policy=open: job accepted without a hold", r.account,
		r.partition, why)
	attach(job_desc, old_comment, "asbb:unchecked")
	return slurm.SUCCESS
end

local sequence = 0

-- Unique per call: a retry of the same call (none today) would reuse it.
local function request_id(cfg, kind)
	sequence = sequence + 1
	return string.format("%s:%s:%d:%d:%06d", cfg.cluster ~= "" and cfg.cluster or "slurm", kind,
		os.time(), sequence, math.random(0, 999999))
end

---------------------------------------------------------------------------------------------
-- The plugin's entry points

function slurm_job_submit(job_desc, part_list, submit_uid)
	local cfg = read_config()
	local r, problem, exempt = describe(cfg, job_desc, part_list, submit_uid, nil)
	if not r then
		log("submission by uid %s refused: %s", tostring(submit_uid), problem)
		slurm.log_user("asbb: job refused: %s", problem)
		return slurm.ERROR
	end
	if exempt then
		return slurm.SUCCESS
	end
	local offset = job_desc.het_job_offset
	local kind = "submit"
	if set(offset) then
		-- Each component of a heterogeneous job is priced and held on its own.
		kind = "het" .. offset
	end
	r.request_id = request_id(cfg, kind)
	return decide(cfg, job_desc, r, "submission", job_desc.admin_comment)
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
	-- Only a new time limit or partition changes the price.
	local new_limit = set(job_desc.time_limit) or job_desc.time_limit == INFINITE
	local new_part = job_desc.partition ~= nil and job_desc.partition ~= job_rec.partition
	if not new_limit and not new_part then
		return slurm.SUCCESS
	end
	-- 0 = pending, 1 = running: the hold is still open.
	local state = job_rec.job_state
	if type(state) == "number" and state % 256 > 1 then
		return slurm.SUCCESS
	end
	local cfg = read_config()
	local r, problem, exempt = describe(cfg, job_desc, part_list, modify_uid, job_rec)
	if not r then
		log("modification of job %s refused: %s", tostring(job_rec.job_id), problem)
		slurm.log_user("asbb: change refused: %s", problem)
		return slurm.ERROR
	end
	if exempt then
		return slurm.SUCCESS
	end
	local comment = job_rec.admin_comment
	if type(comment) == "string" then
		r.replace_hold = comment:match("asbb:(hold%-%d+)")
	end
	r.job_id = tostring(job_rec.job_id)
	r.request_id = request_id(cfg, "modify" .. tostring(job_rec.job_id))
	return decide(cfg, job_desc, r, "change of job " .. tostring(job_rec.job_id), comment)
end

math.randomseed(os.time())
slurm.log_info("asbb: job_submit.lua loaded (%s)", have_socket and "luasocket" or "curl")
return slurm.SUCCESS
