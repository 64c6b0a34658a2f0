# A message moved into Junk: label it spam, as this IMAP user.
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];

if environment :matches "imap.user" "*" {
  set "username" "${1}";
}

pipe :copy "spamd-report-spam" [ "${username}" ];
