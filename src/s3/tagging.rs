//! Object tags (Get/Put/DeleteObjectTagging) and the ACL reads clients
//! make before copying or syncing (Get{Object,Bucket}Acl: every key of
//! the gateway has full control, which is what the answer says; ACL
//! writes stay NotImplemented).

use std::collections::BTreeMap;

use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Result};

use super::front::{blocking, Front};
use super::objects::only_null_version;
use super::representation::{tag_set, tags_of_tagging};

/// The one owner every bucket and object here has.
fn owner() -> Owner {
    Owner {
        display_name: Some("redstuff".into()),
        id: Some("redstuff".into()),
    }
}

/// Full control for the owner: the whole of what an ACL here can say.
fn full_control() -> Grants {
    vec![Grant {
        grantee: Some(Grantee {
            display_name: Some("redstuff".into()),
            email_address: None,
            id: Some("redstuff".into()),
            type_: Type::from_static(Type::CANONICAL_USER),
            uri: None,
        }),
        permission: Some(Permission::from_static(Permission::FULL_CONTROL)),
    }]
}

impl Front {
    async fn write_tags(
        &self,
        bucket: String,
        key: String,
        tags: BTreeMap<String, String>,
    ) -> S3Result<()> {
        let index = self.index.clone();
        let (b, k) = (bucket.clone(), key.clone());
        if blocking(move || index.set_tags(&b, &k, &tags)).await? {
            Ok(())
        } else {
            Err(s3_error!(NoSuchKey, "no object at {key} in {bucket}"))
        }
    }

    /// GetObjectTagging.
    pub async fn get_object_tagging(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<GetObjectTaggingOutput> {
        let input = req.input;
        let record = self
            .version(&input.bucket, &input.key, input.version_id.as_deref())
            .await?;
        Ok(GetObjectTaggingOutput {
            tag_set: tag_set(&record.tags),
            version_id: None,
        })
    }

    /// PutObjectTagging: replaces the object's tags.
    pub async fn put_object_tagging(
        &self,
        req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<PutObjectTaggingOutput> {
        let input = req.input;
        only_null_version(input.version_id.as_deref())?;
        let tags = tags_of_tagging(input.tagging)?;
        self.write_tags(input.bucket, input.key, tags).await?;
        Ok(PutObjectTaggingOutput::default())
    }

    /// DeleteObjectTagging: removes every tag.
    pub async fn delete_object_tagging(
        &self,
        req: S3Request<DeleteObjectTaggingInput>,
    ) -> S3Result<DeleteObjectTaggingOutput> {
        let input = req.input;
        only_null_version(input.version_id.as_deref())?;
        self.write_tags(input.bucket, input.key, BTreeMap::new())
            .await?;
        Ok(DeleteObjectTaggingOutput::default())
    }

    /// GetObjectAcl.
    pub async fn get_object_acl(
        &self,
        req: S3Request<GetObjectAclInput>,
    ) -> S3Result<GetObjectAclOutput> {
        let input = req.input;
        self.version(&input.bucket, &input.key, input.version_id.as_deref())
            .await?;
        Ok(GetObjectAclOutput {
            grants: Some(full_control()),
            owner: Some(owner()),
            request_charged: None,
        })
    }

    /// GetBucketAcl.
    pub async fn get_bucket_acl(
        &self,
        req: S3Request<GetBucketAclInput>,
    ) -> S3Result<GetBucketAclOutput> {
        let bucket = req.input.bucket;
        let (index, b) = (self.index.clone(), bucket.clone());
        if !blocking(move || index.bucket_exists(&b)).await? {
            return Err(s3_error!(
                NoSuchBucket,
                "the bucket {bucket} does not exist"
            ));
        }
        Ok(GetBucketAclOutput {
            grants: Some(full_control()),
            owner: Some(owner()),
        })
    }
}
