-- Runs slurm/job_submit.lua outside slurmctld, for tests/job_submit_lua.rs:
--   lua5.1 harness.lua JOB_SUBMIT_LUA SETTINGS_FILE < commands
-- with a stand-in `slurm` table and the settings file in place of /etc/slurm/asbb_submit.conf.
-- Commands, one a line: `submit` (one sbatch of 1 CPU for 10 minutes in partition aws of
-- account proj) or `sleep SECONDS`. Each submission prints one line:
--   rc=<0 accepted|-1 refused> comment=<AdminComment> ms=<time taken> user=<what sbatch shows>
-- and what the script logs goes to stderr.
local script, conf = arg[1], arg[2]
local to_user = {}
slurm = {
	SUCCESS = 0,
	ERROR = -1,
	log_info = function(fmt, ...)
		io.stderr:write(string.format(fmt, ...), "\n")
	end,
	log_user = function(fmt, ...)
		to_user[#to_user + 1] = string.format(fmt, ...)
	end,
}
local f = assert(io.open(script, "r"))
local text = f:read("*a")
f:close()
local n
text, n = text:gsub('"/etc/slurm/asbb_submit%.conf"', string.format("%q", conf), 1)
assert(n == 1, "the settings file's path was not found in " .. script)
assert(loadstring(text, "=job_submit.lua"))()

local socket = require("socket")
local part_list = { aws = { name = "aws", max_time = 1440 } }
for line in io.lines() do
	local cmd, a = line:match("^(%S+)%s*(.*)$")
	if cmd == "sleep" then
		socket.sleep(tonumber(a))
	elseif cmd == "submit" then
		to_user = {}
		local job = {
			account = "proj",
			partition = "aws",
			time_limit = 10,
			min_nodes = 1,
			num_tasks = 1,
			user_name = "alice",
		}
		local t0 = socket.gettime()
		local rc = slurm_job_submit(job, part_list, 1000)
		print(string.format("rc=%d comment=%s ms=%.0f user=%s", rc, tostring(job.admin_comment),
			(socket.gettime() - t0) * 1000, table.concat(to_user, " | ")))
		io.stdout:flush()
	end
end
